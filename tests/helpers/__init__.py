"""What the tests share: the hard synthetic style, the oracles and the scripts some tests run in
a process of their own."""
