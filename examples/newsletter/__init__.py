"""The newsletter example: the handler of the `email-senders` consumer."""
