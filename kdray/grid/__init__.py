"""The grid on Ray: `run.run_experiment` prepares the data and runs every unfinished run as a
Ray Tune trial (`tune`), teachers before their students (`schedule`), with a live view
(`progress`); `submit` sends a job to a Ray cluster."""
