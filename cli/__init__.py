"""The ``comfyc`` command line: one module per subcommand in :mod:`comfyc.cli.commands`.

It sits on top of the frontends, the compiler, the runtime and the server, and is the only
layer besides :mod:`comfyc.serve` that may import all of them.
"""
