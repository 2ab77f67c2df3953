"""Running jobs: launch.py starts a runner per job, runner.py owns the job process, energy.py measures it."""
