"""detoxedit: detoxify large language models by knowledge editing.

Implements the SafeEdit benchmark and DINM (Wang et al., "Detoxifying Large Language Models via
Knowledge Editing", ACL 2024) for any Hugging Face causal LM. Importing the package has no side
effects: seeds, logging and devices are set by the command-line entry point.
"""

__version__ = "0.1.0"
