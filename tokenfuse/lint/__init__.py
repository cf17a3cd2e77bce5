"""``tokenfuse lint``: static checks for LLM calls without an output-token limit,
above a ceiling, or inside loops nothing bounds (rules TF001-TF005)."""
