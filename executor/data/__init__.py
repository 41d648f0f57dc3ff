"""Training data: corpus files -> tokeniser -> a memory-mapped token store -> sequences -> global batches."""
