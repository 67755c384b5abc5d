"""Tool-integrated reasoning: the code sandbox, the transcript harness (`generate`) and the
OpenAI-compatible server (`serve`)."""
