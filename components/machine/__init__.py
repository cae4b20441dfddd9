# Components of the board itself: memory and link statistics, GPIO outputs and inputs, PWM, ADC, buses.
