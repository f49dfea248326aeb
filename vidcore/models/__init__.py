"""Compact seed models on vidcore ops (transformers PreTrainedModels). Imported lazily: the
package itself does not import transformers."""
