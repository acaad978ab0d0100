"""A stateful, Stripe-compatible server for usage billing, driven by the real `stripe` SDK."""

from .server import SandboxControl, SandboxHandle, run_sandbox, serve

__all__ = ["SandboxControl", "SandboxHandle", "run_sandbox", "serve"]
