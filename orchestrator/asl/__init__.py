"""The Amazon States Language as Orderflow reads it: resources bound to commands, extensions, paths, intrinsics."""
