"""Sub-commands of the detoxedit CLI that are not owned by a sub-package."""
