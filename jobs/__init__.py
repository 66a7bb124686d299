"""Jobs: FC and FL jobs, tasks, assignments, workers and the dispatch plane."""
