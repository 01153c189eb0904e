"""Tasks: what a target is, how a model for it is built, its supervised loss, what a teacher
hands a student, its metrics and the primary metric every table, selection and verdict uses."""
