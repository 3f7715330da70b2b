"""The incident graph: the LangGraph StateGraph that wires the agents, its checkpointer and its comments."""
