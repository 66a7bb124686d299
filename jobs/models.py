"""Jobs and the dispatch plane."""
