"""bench.trace_summary: busy and idle time, kernel kinds, and clear errors on traces without GPU kernels."""

from __future__ import annotations

import json

import pytest
import torch

from eve_lightning.bench import trace_summary as ts


def _kernel(ts_us: float, dur: float, name: str, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "ts": ts_us, "dur": dur, "name": name, "args": {"stream": 7}}


def _trace(*events: dict) -> dict:
    cpu = {"ph": "X", "cat": "cpu_op", "ts": 0.0, "dur": 5000.0, "name": "aten::mm"}  # not a GPU event
    return {"traceEvents": [cpu, *events]}


def test_kinds_by_name() -> None:
    assert ts.kind_of("nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NTN") == "matmul"
    assert ts.kind_of("sm90_xmma_gemm_e4m3bf16_e4m3f32_f32_tn_n_tilesize128x128x128") == "matmul_fp8"
    assert ts.kind_of("nvjet_sm90_qrtst_128x160_128x5_2x1_v_bz_coopA_algo2_TNT") == "matmul_fp8"
    assert ts.kind_of("nvjet_sm90_qqtst_320x128_128x3_1x2_h_bz_coopB_TNT") == "matmul_fp8"
    flash = "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, cutlass::bfloat16_t>>"
    assert ts.kind_of(flash) == "attention"
    assert ts.kind_of("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamWMath>") == (
        "optimizer"
    )
    assert ts.kind_of("triton_red_fused_abs_max_0") == "fp8_scale_cast"
    separate_amax = (  # the reduction models.fp8.abs_max runs (vector_norm of order infinity)
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<c10::BFloat16, "
        "at::native::AbsMaxOps<c10::BFloat16, float>, unsigned int, float, 4, 4>>"
    )
    assert ts.kind_of(separate_amax) == "fp8_scale_cast"
    assert ts.kind_of("void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float, MeanOps<float>>>") == ts.OTHER
    assert ts.kind_of("triton_poi_fused__unsafe_view_mul_silu_silu_backward_3") == "compiled_fused"
    assert ts.kind_of("Memcpy HtoD (Pinned -> Device)") == "copy_cast"
    assert ts.kind_of("void at::native::elementwise_kernel<128, 4, at::native::direct_copy_kernel_cuda>") == "copy_cast"
    binary = "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<BinaryFunctor<float>>>"
    assert ts.kind_of(binary) == ts.OTHER  # arithmetic, not a cast
    assert ts.kind_of("some_custom_kernel") == ts.OTHER


def test_busy_counts_overlaps_once_and_idle_is_the_rest() -> None:
    events = ts.gpu_events(
        _trace(
            _kernel(0, 100, "nvjet_a"),
            _kernel(50, 100, "flash_fwd_kernel"),  # overlaps the first on another stream: 0-150 busy
            _kernel(200, 50, "triton_poi_fused_add_0"),  # 50 us gap before it
            _kernel(300, 100, "Memcpy DtoD", cat="gpu_memcpy"),  # 50 us gap
        )
    )
    s = ts.summarize(events, steps=2)
    assert s["span_ms"] == pytest.approx(400 / 2 / 1000)
    assert s["busy_ms"] == pytest.approx(300 / 2 / 1000)
    assert s["idle_ms"] == pytest.approx(100 / 2 / 1000)
    assert s["kernel_ms"] == pytest.approx(350 / 2 / 1000)  # overlapping kernels both count in the kinds
    assert s["kinds"]["matmul"]["ms"] == pytest.approx(0.05)
    assert s["kinds"]["attention"]["share"] == pytest.approx(100 / 350)
    assert list(s["kinds"])[-1] == "compiled_fused"  # sorted by time, the smallest last
    assert s["top"][0]["calls_per_step"] == 0.5


def test_cli_prints_and_writes_json(tmp_path, capsys) -> None:
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps(_trace(_kernel(0, 2000, "nvjet_x"), _kernel(3000, 1000, "flash_fwd"))))
    out = tmp_path / "summary.json"
    s = ts.main([str(trace), "--steps", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert "idle 1.0 ms (25.0%)" in text and "matmul" in text and "nvjet_x" in text
    assert json.loads(out.read_text())["busy_ms"] == pytest.approx(s["busy_ms"]) == pytest.approx(3.0)


def test_cpu_trace_is_refused_with_the_reason(tmp_path, capsys) -> None:
    """A real torch.profiler trace of a CPU run has no GPU kernels: the error says so instead of printing zeros."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.randn(64, 64) @ torch.randn(64, 64)
    path = tmp_path / "cpu_trace.json"
    prof.export_chrome_trace(str(path))
    with pytest.raises(SystemExit):
        ts.main([str(path)])
    assert "no GPU kernels" in capsys.readouterr().err


def test_missing_and_truncated_traces(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        ts.main([str(tmp_path / "nope.json")])
    assert "no trace file" in capsys.readouterr().err
    cut = tmp_path / "cut.json"
    cut.write_text('{"traceEvents": [{"ph": "X"')
    with pytest.raises(SystemExit):
        ts.main([str(cut)])
    assert "not a JSON trace" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 1"):
        ts.summarize([(0.0, 1.0, "k")], steps=0)
