import sys

try:
    from kdbench.compute.distributed import exit_process

    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while torch and friends are still importing
    print("kdbench: interrupted while starting; nothing was changed", file=sys.stderr)
    sys.exit(130)

exit_process(main())
