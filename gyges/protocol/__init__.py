"""The contract between the controller and the devices it drives: the commands a device takes, the
answers it gives, and the `Backend` every kind of device (worker processes, simulated devices)
offers the controller. Plain data only; it imports no other part of Gyges, so both sides build on
it and neither imports the other."""
