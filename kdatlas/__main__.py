"""``python -m kdatlas`` (and ``accelerate launch -m kdatlas run ID``) runs the command line."""

from kdatlas.cli import main

if __name__ == "__main__":
    main()
