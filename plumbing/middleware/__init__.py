"""The consumer's concerns as middlewares, run forward then in reverse (plumbing/middleware/stack.py)."""
