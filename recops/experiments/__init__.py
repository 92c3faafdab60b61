"""Online experiments: assignment, interleaving and the statistics that decide promotion."""
