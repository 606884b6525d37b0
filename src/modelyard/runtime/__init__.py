"""In-process engines (llama.cpp, torch, scikit-learn) and the mechanics of moving their weights."""
