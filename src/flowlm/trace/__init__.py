"""Tracing model outputs back to training data (OLMoTrace at one-machine scale): a suffix-array index over
token stores (`index`), OLMoTrace's span rules (`spans`), the tracer (`tracer`), the stores a run's model
trained on (`lineage`) and the `flowlm trace` verb (`cli`)."""
