"""Deciding when and on how many devices each job runs. Pure: no clock, no network, no database."""
