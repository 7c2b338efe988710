"""`python -m loyaltylens_core.cli`: the same as the `loyaltylens` command."""

from loyaltylens_core.cli import main

main()
