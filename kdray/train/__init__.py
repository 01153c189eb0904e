"""Training one run: the session (student, method, teachers, batches, optimizer), one epoch,
evaluation, the soft-label cache, the cost of the trained model, and the Ray Train worker loop
that trains a trial's pack of runs (`worker.train_pack`; one run: `run_loop.train_run`)."""
