"""Model families: how a base model of one architecture is loaded, how a checkpoint is applied to it, and the parts of it that methods and attacks use."""
