"""``python -m kakehashi`` runs the same CLI as the ``kakehashi`` console script."""

from kakehashi.cli import main

main()
