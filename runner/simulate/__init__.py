"""Handlers run on a simulated clock against a throwaway embedded engine.

`simulation` (the `Simulation`: the real workers of `runner.pipeline` on an
embedded engine in a temporary directory, time driven by a manual clock),
`dryrun` (`runner route --run`: where a message goes and what each handler
would do with it) and `testrun` (`runner test`: a topology's test cases).

A composition root like the daemon: it opens the embedded engine itself, so it
sits above `runner.pipeline`, which talks to a backend only through
`runner.engine.contract`.
"""
