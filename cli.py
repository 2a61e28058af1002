"""Root shim so `python cli.py ...` works from a checkout; the CLI lives in unrestrict/cli.py."""
from unrestrict.cli import main

if __name__ == "__main__":
    main()
