"""The e-commerce example: handlers of the `order-events` consumer groups."""
