"""The commands, one module each: settings in, an exit code out.

    cli.py --(settings)--> plan     print the windows (settings and planner only)
                           run      run and retry: the engine, wired to the checkpoint, HTTP,
                                    tokens, limiter, progress, report and metrics
                           dry_run  every check of run, read-only
                           status   checkpoints as text, JSON or a coverage page
                           wiring   what run, dry_run and status build the same way

The CLI imports a command's module only once it has parsed the command line, so ``--help``
and ``plan`` never load the engine, the checkpoint or aiohttp.
"""
