"""The worker role: claim queued jobs from the store and run them (loop.py), one job's run
(the pipeline), lost workers (recovery.py), the `ci-worker` command (__main__.py)."""
