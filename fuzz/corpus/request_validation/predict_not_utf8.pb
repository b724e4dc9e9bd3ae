
abc*Ã(