"""memaudit: which training samples did a fine-tuned LLM memorize, and can we predict them early?"""

__version__ = "0.1.0"
