"""Port of Snowflake's "PyTorch on GPU" quickstart, run on CPU.

Source: Snowflake-Labs/sfguide-getting-started-with-container-runtime-apis,
PyTorch_on_GPU_Quickstart.ipynb (all Python cells; the first cell is SQL creating a compute
pool). Differences from the original: the imports, the device (``.to(rank)`` ->
``.to("cpu")``) and the worker's resources (``WorkerResourceConfig(num_cpus=0, num_gpus=1)``
-> ``(num_cpus=1, num_gpus=0)``): this machine has no GPU.
"""

# Initialize Snowflake session
from mlruntime import get_active_session
session = get_active_session()

# Load data from the Snowflake table
table_name = 'CR_QUICKSTART.PUBLIC.VEHICLE'
snowpark_df = session.table(table_name)

# Convert Snowpark DataFrame to Pandas DataFrame using DataConnector
from mlruntime import DataConnector
pandas_df = DataConnector.from_dataframe(snowpark_df).to_pandas()

# Drop the 'C2' column (datetime column) from the dataset
pandas_df = pandas_df.drop(columns=['C2'])

# Split the data into features (X) and target (y). Assume C6 is the target column.
X = pandas_df.drop('C6', axis=1)
y = pandas_df['C6']

# Define input columns and label column
input_cols = X.columns.tolist()
label_col = 'C6'

# Create ShardedDataConnector for data ingestion
from mlruntime import ShardedDataConnector

# Drop the 'C2' column (datetime column) from the dataset
snowpark_df = snowpark_df.drop(['C2'])
data_connector = ShardedDataConnector.from_dataframe(snowpark_df)

# Import necessary PyTorch libraries
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader

# Define a simple neural network
class SimpleNet(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super(SimpleNet, self).__init__()
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden_size, output_size)
    def forward(self, x):
        x = self.fc1(x)
        x = self.relu(x)
        x = self.fc2(x)
        return x

# Define the training function
def train_func():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from mlruntime_pytorch import get_context
    context = get_context()
    rank = context.get_rank()
    dist.init_process_group(backend='gloo')

    # Initialize model, loss function, and optimizer
    model = SimpleNet(input_size=len(input_cols), hidden_size=32, output_size=1).to("cpu")
    model = DDP(model)
    criterion = nn.MSELoss()
    optimizer = optim.Adam(model.parameters(), lr=0.001)

    # Retrieve training data
    dataset_map = context.get_dataset_map()
    torch_dataset = dataset_map['train'].get_shard().to_torch_dataset(batch_size=1024)
    dataloader = DataLoader(torch_dataset, batch_size=None)

    # Training loop
    for epoch in range(10):
        for batch_dict in dataloader:
            labels = batch_dict.pop(label_col).squeeze().float().to("cpu")
            features = torch.stack(
                    [tensor.to(torch.float32).squeeze() for key, tensor in batch_dict.items()], dim=1
            ).to("cpu")

            output = model(features)
            loss = criterion(output, labels.unsqueeze(1))

            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f'Epoch [{epoch+1}/10], Loss: {loss.item():.4f}')

    print('Training finished')

# Import and configure PyTorchDistributor for multi-GPU distributed training
from mlruntime_pytorch import PyTorchDistributor
from mlruntime_pytorch import (
    PyTorchScalingConfig, WorkerResourceConfig
)

distributor = PyTorchDistributor(
    train_func=train_func,  # Function that trains the model
    scaling_config=PyTorchScalingConfig(num_nodes=1, num_workers_per_node=1, resource_requirements_per_worker=WorkerResourceConfig(num_cpus=1, num_gpus=0))  # Number of processes (adjust based on number of GPUs)
)

# Start training
distributor.run(
    dataset_map=dict(train=data_connector)
)
