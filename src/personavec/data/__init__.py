"""Training data: readers and writers, screening by projection difference, the graded trait-dataset kit."""
