"""The reference trainer: model, the two alignment stages and the loop, evaluation and chat."""
