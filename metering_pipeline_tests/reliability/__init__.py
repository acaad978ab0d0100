"""One module per hazard a billing team fears: each test reproduces the failure, then proves
the fix."""
