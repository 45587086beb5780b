"""The models: the empathy identifiers (encoders, scoring with the three), the T5 generator, its prefix
and the policy interface. Imports only the foundation (emprl's top-level modules)."""
