"""The configs lvae installs with itself: `lvae fit --config mnist` finds configs/mnist.yaml wherever lvae is."""
