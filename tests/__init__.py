"""The test suite. ``tests.helpers`` holds what several test files share; the repository root is on the path."""
