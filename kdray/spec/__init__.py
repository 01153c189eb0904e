"""The job file and the plan: what a user asks for, validated (`job`), and the runs it expands
to, each with a stable id (`plan`). Pure Python, no Ray."""
