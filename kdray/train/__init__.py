"""Training one run: the session (student, method, teachers, batches, optimizer), one epoch,
evaluation, the soft-label cache, the cost of the trained model, and the Ray Train worker loop
that strings them together (`worker.train_loop`)."""
