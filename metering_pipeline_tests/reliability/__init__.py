"""One module per hazard a billing team fears: each test reproduces it, then proves the fix."""
