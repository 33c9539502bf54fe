"""A loaded model: loading and the embedded model, chat templates, batching, residual-stream hooks,
out-of-memory back-off, the torch runtime (threads, run metadata), tensor files and the scripts' start-up."""
