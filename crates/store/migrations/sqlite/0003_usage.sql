-- Which agent served each step, and the tokens and cost of its LLM calls (JSON).
ALTER TABLE steps ADD COLUMN agent TEXT;
ALTER TABLE steps ADD COLUMN usage TEXT;
