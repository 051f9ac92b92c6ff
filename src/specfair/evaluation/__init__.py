"""Stage 3: per-category evaluation as a Lightning predict loop; `acceptance` is the DDP-exact metric that turns
per-prompt counters into the glossary's ratios."""
