CREATE DATABASE recops_mlflow;
CREATE DATABASE recops_prefect;
