
arm-02:left