# client tests
