"""Scripts the tests launch (under torchrun, as subprocesses) or import; each also runs alone."""
